"""Robustness reports: attack suites and the worst case (`suite`, `threats`), sanity checks against gradient masking
(`sanity`), transfer attacks (`transfer`), feature distances (`features`), mask statistics (`masks`), run folders and
test images (`runs`), the reports of bin/evaluate and bin/r2s (`report`, `r2s_report`) and their figures (`plots`)."""
