"""The scan path: request items → recent-id answers → batches verified → WAL group commit → drain into the store."""
