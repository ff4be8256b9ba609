"""A small stand-in for PythonQt's ``qt`` module: only what SodiumDIP.py and Slicer's own Python use.

Behaviour that the module depends on is kept as Qt has it: signals call every connected slot in connection
order with as many arguments as the slot accepts (PythonQt does the same); a QComboBox emits
``currentIndexChanged`` when ``clear()`` empties it and when the first item is added; spin boxes clamp
their value into [minimum, maximum] and a QDoubleSpinBox rounds it to ``decimals``; setters emit their
change signal only when the value changes; a QTimer fires only when the test ticks it (``tick_timers``).
``QUiLoader`` builds these widgets from a Qt Designer ``.ui`` file (widgets, properties, dynamic
properties and the file's signal/slot connections).
"""

from __future__ import annotations

import builtins
import inspect
import xml.etree.ElementTree as ET

# --- signals -----------------------------------------------------------------------------------------


def _arity(slot):
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class Signal:
    """A bound signal: connect / disconnect / emit, slots called in connection order."""

    def __init__(self, name=""):
        self.name = name
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
            return
        for i, s in enumerate(self._slots):
            if s == slot:
                del self._slots[i]
                return
        raise RuntimeError(f"disconnect(): {slot} is not connected to {self.name}")

    def emit(self, *args):
        for slot in list(self._slots):
            n = _arity(slot)
            slot(*(args if n is None else args[:n]))

    @property
    def slot_count(self):
        return len(self._slots)


class QObject:
    _signal_names: tuple = ()

    def __init__(self, parent=None):
        self._properties = {}
        self._children = []
        self._parent = None
        self.objectName = ""
        for cls in type(self).__mro__:
            for name in getattr(cls, "_signal_names", ()):
                if name not in self.__dict__:
                    setattr(self, name, Signal(name))
        if parent is not None:
            self.setParent(parent)

    # PythonQt's string-signature connections: obj.connect("clicked(bool)", slot)
    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value
        return True

    @builtins.property
    def name(self):
        return self.objectName

    def findChildren(self, cls=None):
        out = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                out.append(child)
            out += child.findChildren(cls)
        return out

    def className(self):
        return type(self).__name__


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._enabled = True
        self.visible = True
        self.toolTip = ""
        self._layout = None

    def isWidgetType(self):
        return True

    @property
    def enabled(self):
        return self._enabled and (not isinstance(self._parent, QWidget) or self._parent.enabled)

    @enabled.setter
    def enabled(self, value):
        self._enabled = bool(value)

    def setEnabled(self, value):
        self.enabled = value

    def isEnabled(self):
        return self.enabled

    def setVisible(self, value):
        self.visible = bool(value)

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def setToolTip(self, text):
        self.toolTip = text

    def deleteLater(self):
        pass


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__()
        self._owner = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        widget.setParent(self._owner)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                item.setParent(self._owner)

    def addLayout(self, layout, *args):
        layout._owner = self._owner


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


# --- widgets ----------------------------------------------------------------------------------------


class QLabel(QWidget):
    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text = text
        self.wordWrap = False


class QAbstractButton(QWidget):
    _signal_names = ("clicked", "toggled", "pressed", "released")

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text = text
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)
            self._on_toggled(value)

    def _on_toggled(self, value):
        pass

    def setChecked(self, value):
        self.checked = value

    def isChecked(self):
        return self.checked

    def click(self):
        """What a user's click does: nothing when disabled, else toggles (checkable) and emits clicked."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    _signal_names = ("stateChanged",)

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def _on_toggled(self, value):
        self.stateChanged.emit(2 if value else 0)


class QComboBox(QWidget):
    _signal_names = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._index = -1

    def _set_index(self, index):
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        index = int(index)
        if not -1 <= index < len(self._items):
            index = -1
        self._set_index(index)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentText(self):
        return self._items[self._index] if self._index >= 0 else ""

    @property
    def count(self):
        return len(self._items)

    def itemText(self, index):
        return self._items[index]

    def addItem(self, text, *args):
        self._items.append(str(text))
        if self._index == -1:
            self._set_index(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def clear(self):
        had_items = bool(self._items)
        self._items = []
        if had_items:
            self._set_index(-1)

    def findText(self, text):
        return self._items.index(text) if text in self._items else -1


class _AbstractSpinBox(QWidget):
    _signal_names = ("valueChanged",)
    _integer = True

    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum = 0, 99
        self._value = 0
        self.singleStep = 1
        self.suffix = ""

    def _fit(self, value):
        value = min(max(value, self._minimum), self._maximum)
        return int(round(value)) if self._integer else value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = self._fit(value)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setValue(self, value):
        self.value = value

    @property
    def minimum(self):
        return self._minimum

    @minimum.setter
    def minimum(self, value):
        self._minimum = value
        self._maximum = max(self._maximum, value)
        self.value = self._value

    @property
    def maximum(self):
        return self._maximum

    @maximum.setter
    def maximum(self, value):
        self._maximum = value
        self._minimum = min(self._minimum, value)
        self.value = self._value

    def setMinimum(self, value):
        self.minimum = value

    def setMaximum(self, value):
        self.maximum = value

    def setRange(self, low, high):
        self._minimum, self._maximum = low, max(low, high)
        self.value = self._value


class QSpinBox(_AbstractSpinBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum = 0, 99


class QDoubleSpinBox(_AbstractSpinBox):
    _integer = False

    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum = 0.0, 99.99
        self._value = 0.0
        self._decimals = 2

    @property
    def decimals(self):
        return self._decimals

    @decimals.setter
    def decimals(self, value):
        self._decimals = int(value)
        self.value = self._value

    def _fit(self, value):
        value = round(float(value), self._decimals)  # Qt keeps what the box can show
        return min(max(value, round(self._minimum, self._decimals)), round(self._maximum, self._decimals))


class QSlider(QSpinBox):
    pass


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.value = 0, 100, 0
        self.textVisible = True


class QLineEdit(QWidget):
    _signal_names = ("textChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""


class QTextEdit(QLineEdit):
    pass


class QMenu(QWidget):
    pass


class QAction(QObject):
    _signal_names = ("triggered",)


class QSizePolicy:
    Preferred = Expanding = Fixed = Minimum = 0

    def __init__(self, *args):
        pass


class QIcon:
    def __init__(self, path=""):
        self.path = path


class QColor:
    def __init__(self, *args):
        self.args = args


class QUrl:
    TolerantMode = 0

    def __init__(self, *args):
        self.args = args


class QSettings:
    _values: dict = {}

    def value(self, key, default=None):
        return self._values.get(key, default)

    def setValue(self, key, value):
        self._values[key] = value

    def contains(self, key):
        return key in self._values


class QMessageBox:
    Ok, Cancel, Yes, No = 0x400, 0x400000, 0x4000, 0x10000
    Critical = Warning = Information = Question = NoIcon = 0


class Qt:
    WaitCursor = 3
    ShiftModifier = 0x02000000


# --- timers -----------------------------------------------------------------------------------------


class QTimer(QObject):
    """A timer that fires when the test ticks it (``tick_timers``), never on its own."""

    _signal_names = ("timeout",)
    _all: list = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self._active = False
        self.interval = 0
        self.singleShot_ = False
        QTimer._all.append(self)

    def setInterval(self, ms):
        self.interval = ms

    def setSingleShot(self, value):
        self.singleShot_ = bool(value)

    def start(self, ms=None):
        if ms is not None:
            self.interval = ms
        self._active = True

    def stop(self):
        self._active = False

    def isActive(self):
        return self._active

    @property
    def active(self):
        return self._active

    _pending_single_shots: list = []

    @staticmethod
    def singleShot(ms, callback):
        QTimer._pending_single_shots.append(callback)


def tick_timers():
    """One round of the event loop: pending single shots, then every active timer's timeout once."""
    shots, QTimer._pending_single_shots[:] = list(QTimer._pending_single_shots), []
    for callback in shots:
        callback()
    for timer in list(QTimer._all):
        if timer._active:
            if timer.singleShot_:
                timer._active = False
            timer.timeout.emit()


# --- .ui files --------------------------------------------------------------------------------------


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        import os

        return os.path.isfile(self.path)

    def open(self, mode):
        return True

    def close(self):
        pass


def _value(prop):
    """The Python value of a Designer <property> element."""
    child = list(prop)[0]
    tag, text = child.tag, child.text
    if tag == "bool":
        return text == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "string" or tag == "cstring" or tag == "enum" or tag == "set":
        return text or ""
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    return None


#: Properties the loader sets in this order first (Qt Designer writes minimum/maximum before value too).
_ORDER = ("minimum", "maximum", "decimals", "singleStep")


class QUiLoader:
    """Builds a widget tree from a .ui file with the classes registered in ``widget_classes``."""

    widget_classes: dict = {}

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot()
        top = root.find("widget")
        widgets = {}
        widget = self._build(top, None, widgets)
        for connection in root.iter("connection"):
            sender = widgets[connection.findtext("sender")]
            receiver = widgets[connection.findtext("receiver")]
            slot = getattr(receiver, connection.findtext("slot").split("(")[0])
            sender.connect(connection.findtext("signal"), slot)
        return widget

    def _build(self, element, parent, widgets):
        cls = self.widget_classes.get(element.get("class")) or globals().get(element.get("class"))
        if cls is None:
            raise RuntimeError(f"no stand-in for widget class {element.get('class')}")
        widget = cls()
        widget.objectName = element.get("name")
        widgets[widget.objectName] = widget
        if parent is not None:
            widget.setParent(parent)
        props = element.findall("property")
        props.sort(key=lambda p: _ORDER.index(p.get("name")) if p.get("name") in _ORDER else len(_ORDER))
        for prop in props:
            name, value = prop.get("name"), _value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(name, value)
            elif name not in ("geometry", "sizeHint", "orientation", "sizePolicy"):
                setattr(widget, name, value)
        for child in element:
            if child.tag == "layout":
                self._layout(child, widget, widgets)
            elif child.tag == "widget":
                self._build(child, widget, widgets)
        return widget

    def _layout(self, element, owner, widgets):
        for item in element.findall("item"):
            for child in item:
                if child.tag == "widget":
                    self._build(child, owner, widgets)
                elif child.tag == "layout":
                    self._layout(child, owner, widgets)
