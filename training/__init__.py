"""Training of the segmentation network (MONAI engines) and its metrics."""
