"""Datasets: download, safe extraction, one parser per dataset, splits, the canonical table, loaders."""
