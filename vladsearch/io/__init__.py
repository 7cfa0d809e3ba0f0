"""Image files and other inputs, the lowest layer: finding and decoding images (images.py,
image_formats.py for HEIC/AVIF/RAW), progress bars, and argparse types shared by every verb.
Imports nothing else of vladsearch.
"""
