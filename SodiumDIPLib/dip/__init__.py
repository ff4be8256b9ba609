"""Deep Image Prior: networks, data fidelities, stopping rules and the fit loop."""
