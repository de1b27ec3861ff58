"""Evaluation: the PAR metrics (`metrics`), a model's probabilities on images (`scoring`), scoring an
artifact on a split with thresholds tuned on validation (`evaluate`), parameters and MACs
(`complexity`)."""
