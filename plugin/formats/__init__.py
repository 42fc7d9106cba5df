"""Data formats of the FiftyOne side: DAVIS / YouTube-VOS folders (:mod:`.vos`) and training clips
from a FiftyOne dataset (:mod:`.training_source`)."""
