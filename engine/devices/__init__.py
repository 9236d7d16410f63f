"""Scanner devices: request authentication on the engine side, and the signing client they (and tests) use."""
