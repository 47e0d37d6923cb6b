"""Data: datasets, file formats, image folders, preprocessing, class names."""
