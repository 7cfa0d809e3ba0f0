"""The read path: search (query → candidates → verification → answer), geometric verification
(verification.py, pair_verification.py, rerank.py) and the results a search returns.
Imports store and the layers under it.
"""
