"""Example Flower app: logistic regression on Wisconsin breast cancer, aggregated with secagg.

Run it (simulation, one command, from the repository root)::

    python -m clients.flower_app --rounds 5 --clients 5 --drop-stage masked_input
"""
