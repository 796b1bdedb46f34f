"""Local tooling, not in the image: a local Kafka broker from the Maven jars, the dev stack, the demo."""
