"""The aiohttp application: the factory, typed state, and one route module per audience."""
