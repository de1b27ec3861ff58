"""Compression: low-rank decomposition (`decompose/`: the methods' registry, CP-ALS and CPD-EPC,
factorized layers, model surgery), rank policies (`ranks/`: one registry, formula and measured
policies, the sensitivity probe, latency plans), structured and unstructured pruning (`prune`),
rebuilding a compressed model from its file (`structure`) and the recipes' plain facts (`recipes`).

This file imports nothing, so that `lwpar.compress.recipes` stays free of torch for the
configuration and the planner.
"""
