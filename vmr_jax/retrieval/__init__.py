"""Retrieval over many videos: one sharded embedding index (``index``), the two-stage corpus
search of the VCMR families (``corpus``, generic ranked lists in ``ranking``, evaluating a
family on a split in ``evaluate``) and FVMR's moment gallery (``gallery``)."""
