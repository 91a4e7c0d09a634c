"""The farm: submit, status, workers, results, cancel, worker, up, down."""
