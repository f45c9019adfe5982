"""The per-scan stages: read a scan, tile it, segment its white cells, cut their crops, and
run one scan end to end (`pipeline`)."""
