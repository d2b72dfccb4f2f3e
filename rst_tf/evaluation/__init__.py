"""Robustness evaluation: attacked accuracy (`attacked`), attack suites and the worst case (`suite`, `threats`),
sanity checks against gradient masking (`sanity`), transfer attacks (`transfer`), feature distances (`features`),
Wilson intervals (`intervals`), run folders and test images (`runs`), the reports of bin/evaluate and bin/r2s
(`report`, `r2s_report`) and their figures (`plots`)."""
