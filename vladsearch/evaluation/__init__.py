"""Measuring retrieval: datasets in our layout and the public benchmarks (datasets.py), mAP and
recall@k (metrics.py), and the `evaluate` verb (evaluate.py).
"""
