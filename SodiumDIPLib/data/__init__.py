"""Volumes and their geometry, file formats (images, raw k-space), resampling, phantoms and simulated cases."""
