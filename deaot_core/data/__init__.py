"""Training and benchmark data, pure numpy / OpenCV / PyTorch: procedural clips (:mod:`.synthetic`),
clip augmentations (:mod:`.augment`) and step batches from any clip source (:mod:`.batches`)."""
