"""The read path: search (query → candidates → verification → answer), geometric verification
(verification.py, pair_verification.py, rerank.py), each feature type's matcher (matching.py:
mutual nearest neighbours or LightGlue) and the results a search returns.
Imports store and the layers under it.
"""
