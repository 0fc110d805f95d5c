"""What several test files (and benchmarks) share: site config builders and the app-side MQTT watcher."""
