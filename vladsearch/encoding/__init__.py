"""How an image's local features become one vector: the k-means codebook (codebook.py), VLAD
aggregation and PCA-whitening (vlad.py), the compact codes of --preset large and of the feature
cache (compact_codes.py), and the Encoder that ties them to an extractor (encoder.py).
Imports only io and features.
"""
