"""tf.train.Example without TensorFlow: the same messages, built from a runtime descriptor.

The Beam job only writes records; importing TensorFlow in every worker costs
seconds of start-up and about a gigabyte of memory. These classes have the
field numbers and types of TensorFlow's example.proto and feature.proto, so
their bytes parse as tf.train.Example (a test checks both ways), and
`write_tfrecord` frames them exactly as tf.io.TFRecordWriter does.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="oid_retinanet/example.proto",
                                             package="oid_retinanet", syntax="proto3")

    def message(name, *fields, nested=()):
        m = fdp.message_type.add(name=name)
        for nest in nested:
            m.nested_type.add().CopyFrom(nest)
        for number, fname, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    repeated, optional = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", (1, "value", _F.TYPE_BYTES, repeated, None))
    message("FloatList", (1, "value", _F.TYPE_FLOAT, repeated, None))
    message("Int64List", (1, "value", _F.TYPE_INT64, repeated, None))
    feature = message("Feature",
                      (1, "bytes_list", _F.TYPE_MESSAGE, optional, ".oid_retinanet.BytesList"),
                      (2, "float_list", _F.TYPE_MESSAGE, optional, ".oid_retinanet.FloatList"),
                      (3, "int64_list", _F.TYPE_MESSAGE, optional, ".oid_retinanet.Int64List"))
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=optional,
                    type_name=".oid_retinanet.Feature")
    message("Features", (1, "feature", _F.TYPE_MESSAGE, repeated,
                         ".oid_retinanet.Features.FeatureEntry"), nested=[entry])
    message("Example", (1, "features", _F.TYPE_MESSAGE, optional, ".oid_retinanet.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName(f"oid_retinanet.{n}"))
            for n in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List"))


Example, Features, Feature, BytesList, FloatList, Int64List = _build_classes()

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_tfrecord(f: BinaryIO, record: bytes) -> None:
    """Appends one record in TFRecord framing: length, its masked CRC-32C, data, its CRC."""
    length = struct.pack("<Q", len(record))
    f.write(length + struct.pack("<I", masked_crc(length)) + record
            + struct.pack("<I", masked_crc(record)))
