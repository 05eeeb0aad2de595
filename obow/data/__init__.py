"""Datasets and the OBoW multi-crop views."""
