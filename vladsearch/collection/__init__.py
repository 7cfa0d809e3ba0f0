"""Questions about the whole collection: every image's nearest neighbours (knn.py), duplicate
groups and which image to keep (duplicates.py, keep_choice.py), what the duplicates verb prints
(report.py) and its command line (cli.py), safe moves with manifests (duplicate_actions.py,
file_moves.py), and image pairs for 3D reconstruction (pairs.py). Built on `vladsearch.index.Index`.
"""
