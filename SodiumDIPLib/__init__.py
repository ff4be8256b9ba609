"""SodiumDIP engine: guided Deep-Image-Prior denoising and reconstruction of sodium MRI.

Pure Python (numpy, SimpleITK, torch); importable without 3D Slicer.
"""

__version__ = "0.1.0"
