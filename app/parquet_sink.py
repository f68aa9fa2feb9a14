"""`ner-bulk`'s Parquet writer: Ray's own loses the input order.

Ray Data's `write_parquet` (2.60) hands a write task's blocks to pyarrow's multi-threaded
dataset writer (`pyarrow.dataset.write_dataset(use_threads=True)`) without `preserve_order`,
so the blocks of one file can land in another order than they came: seen as a job's two
256-row batches swapped inside one output file, under load (apache/arrow#26818). Here a
write task's blocks are joined in order into one table, written by `pyarrow.parquet`. Its own
module because importing Ray Data takes seconds: `ner-bulk --help` need not.
"""

from __future__ import annotations

import pyarrow
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink


class OrderedParquetDatasink(BlockBasedFileDatasink):
    """One Parquet file per write task, rows in the order of the task's blocks."""

    def __init__(self, path: str):
        super().__init__(path, file_format="parquet")

    def write_block_to_file(self, block: BlockAccessor, file: pyarrow.NativeFile) -> None:
        pq.write_table(block.to_arrow(), file)
