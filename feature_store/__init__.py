"""The Feast feature repo: one set of definitions (definitions.py), one feature_store.yaml per environment.

    feature_store/local/feature_store.yaml     SQLite online store, file (parquet) offline store
    feature_store/cluster/feature_store.yaml   Redis online store, parquet on the shared volume

The YAMLs name their paths and addresses as ${ADFLOW_FEAST_DIR} and ${ADFLOW_REDIS_URL}; adflow.features
fills them from the placement, so switching environment never means editing definitions.
"""
