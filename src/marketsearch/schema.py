"""Column names of the data as it moves between stages.

raw snapshot (ingest -> validate -> clean)
    products: RAW_PRODUCT_COLUMNS, every value a string as the marketplace database holds it
    images:   RAW_IMAGE_COLUMNS + ``data`` (photo bytes or None) + ``source_error`` (why the
              bytes are missing, or "")
clean data (clean -> training, index, evaluate)
    products: CLEAN_PRODUCT_COLUMNS
    images:   CLEAN_IMAGE_COLUMNS; ``row`` indexes the uint8 array of preprocessed photos
quarantine (validate, clean)
    QUARANTINE_COLUMNS: which table, the row's id, the field, the reason, and the raw row as JSON
"""
RAW_PRODUCT_COLUMNS = ["id", "product_name", "category", "product_description", "price", "location"]
RAW_IMAGE_COLUMNS = ["id", "product_id", "bucket_link", "image_ref", "create_time"]

CLEAN_PRODUCT_COLUMNS = [
    "id", "title", "description", "text", "price", "category", "category_path",
    "location", "lat", "lon", "split",
]
CLEAN_IMAGE_COLUMNS = ["id", "product_id", "row", "category", "split"]

QUARANTINE_COLUMNS = ["table", "row_id", "stage", "field", "reason", "raw"]

SPLITS = ("train", "val", "test")
