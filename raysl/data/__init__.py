"""Data: readers (image stores -> Ray Datasets), view augmentation, the pretraining pipeline."""
