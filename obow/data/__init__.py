"""Image sources, the OBoW multi-crop views and the dataset-view wrapper (`views`)."""
