"""Measuring what a network does, for training, R2S and the reports alike: accuracy under attack (`attacked`),
Wilson intervals (`intervals`), paired contrasts between runs (`contrasts`), and the machine a time was measured on
(`machine`)."""
