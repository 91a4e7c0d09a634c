"""The data model of a measurement and its store: results, statistics, machines and peaks, and the
Redis schema (`farm.results.store`, the only code that names a Redis key). Never imports torch."""
