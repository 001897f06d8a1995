"""stylewatch daemon: the service that watches a folder and feeds photos to the engine."""
