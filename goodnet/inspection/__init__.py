"""Looking into a model without poisoned data: reverse-engineered triggers (Neural Cleanse), their
anomaly index, and the detection scores the field reports (AUROC, TPR at a fixed FPR, STRIP)."""
