"""Learned denoisers: the Corruption2Self network and its GDSM training (``gdsm``), the MRI-driven prior
trained on a proton template (``prior``), and the network with its weights file format (``network``).

Nothing here is imported by the engine until a method that needs it runs (torch-only, no extra package).
"""
