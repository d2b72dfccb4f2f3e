"""Studies over many runs: sweeps over remaining ratios (`sweep`) and the paper's reproduction: its plan and runs
(`reproduce`), finished runs measured (`measure`), the claims' verdicts (`claims`) and the report (`report`)."""
