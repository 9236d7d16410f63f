"""What operators watch: Prometheus metrics and the dashboard's derived live figures."""
