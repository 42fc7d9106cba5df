"""DeAOT / AOT video object segmentation core (pure PyTorch; no FiftyOne)."""
