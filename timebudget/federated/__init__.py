"""Federated training with Flower: clients that answer before each round's deadline.

``client`` (the ClientApp) and ``server`` (the ServerApp on Flower's FedAvg) import flwr; ``partition`` (IID and
Dirichlet splits, pure numpy) and ``launcher`` (the loopback deployment behind ``timebudget federated``, which only
starts Flower's processes) do not, so the package can be imported, and its command refused in one line, without flwr.
"""
