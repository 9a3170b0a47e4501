"""The feature keys of our tf.train.Example records: the one list, shared by writer and reader.

Names follow the TF Object Detection API so that existing tools can read the
records. Boxes are normalized to [0, 1] of the stored (resized) image, which
is the same as normalized to the original image since resizing keeps the
aspect ratio.
"""

# Image.
ENCODED = "image/encoded"                    # bytes: JPEG, RGB
FORMAT = "image/format"                      # bytes: b"jpeg"
HEIGHT = "image/height"                      # int64: stored image, pixels
WIDTH = "image/width"                        # int64
ORIGINAL_HEIGHT = "image/original/height"    # int64: before resizing (after EXIF rotation)
ORIGINAL_WIDTH = "image/original/width"      # int64
SOURCE_ID = "image/source_id"                # bytes: the Open Images ImageID
REPEAT_FACTOR = "image/repeat_factor"        # float: LVIS repeat factor (1.0 = no repeat)

# Boxes, one value per object, all lists of the same length.
XMIN = "image/object/bbox/xmin"              # float, normalized
YMIN = "image/object/bbox/ymin"
XMAX = "image/object/bbox/xmax"
YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"     # int64: level-local index, 0-based
CLASS_TEXT = "image/object/class/text"       # bytes: MID
GROUP_OF = "image/object/group_of"           # int64 0/1
OCCLUDED = "image/object/occluded"           # int64 0/1 (-1 not annotated)
TRUNCATED = "image/object/truncated"         # int64 0/1 (-1 not annotated)
DEPICTION = "image/object/depiction"         # int64 0/1 (-1 not annotated)

# Image-level labels (verified present / absent), for the official evaluation rules:
# the level's classes and every class related to them by Subcategory.
IMAGE_CLASS_LABEL = "image/class/label"      # int64: level-local index, -1 outside the level
IMAGE_CLASS_TEXT = "image/class/text"        # bytes: MID
IMAGE_CLASS_CONFIDENCE = "image/class/confidence"  # float: 1 present, 0 absent

BOX_KEYS = (YMIN, XMIN, YMAX, XMAX)
OBJECT_INT_KEYS = (CLASS_LABEL, GROUP_OF, OCCLUDED, TRUNCATED, DEPICTION)
ALL_KEYS = (ENCODED, FORMAT, HEIGHT, WIDTH, ORIGINAL_HEIGHT, ORIGINAL_WIDTH, SOURCE_ID,
            REPEAT_FACTOR, XMIN, YMIN, XMAX, YMAX, CLASS_LABEL, CLASS_TEXT, GROUP_OF, OCCLUDED,
            TRUNCATED, DEPICTION, IMAGE_CLASS_LABEL, IMAGE_CLASS_TEXT, IMAGE_CLASS_CONFIDENCE)
