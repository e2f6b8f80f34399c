"""The Dagster layer: thin wiring of the broker layer (cv_queue.kafka) into resources, assets, jobs and sensors."""
