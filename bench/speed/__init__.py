"""Parts of `make bench` (bench/speed_to_lead.py): open-loop load, the routed-event subscriber, samplers, report."""
