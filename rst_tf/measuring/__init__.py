"""Measuring what a network does, for training, R2S and the reports alike: accuracy under attack (`attacked`),
Wilson intervals (`intervals`) and paired contrasts between runs (`contrasts`)."""
