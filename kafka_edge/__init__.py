"""The Kafka edge every process uses: librdkafka configurations and errors, message errors, positions,
assignment bookkeeping, the DLQ, health, metrics, tracing and lag."""
