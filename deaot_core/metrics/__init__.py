"""Evaluation metrics, pure numpy: the DAVIS 2017 semi-supervised J&F (:mod:`.davis`)."""
