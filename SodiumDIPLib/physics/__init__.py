"""Forward operators (image -> measurement) with adjoints, in torch.

``base`` (LinearOperator, Identity) is all that denoising needs; the k-space operators live in
``physics.cartesian`` (MultiCoilCartesian) and ``physics.radial`` (RadialNUFFT, needs finufft) and are
imported from there, so that image-domain users (the Slicer module) never load a NUFFT library.
"""

from SodiumDIPLib.physics.base import Identity, LinearOperator

__all__ = ["LinearOperator", "Identity"]
