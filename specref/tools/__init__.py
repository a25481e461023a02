"""What a user runs: the command line (`cli`), the benchmark (`bench`), tree calibration (`calibrate`), their
timing helpers (`timing`) and tree options (`options`); pictures belong here too. The top layer: nothing
imports it but `specref.__main__`."""
