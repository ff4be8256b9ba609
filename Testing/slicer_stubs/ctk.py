"""A small stand-in for Slicer's ``ctk`` module: the widget classes that SodiumDIP's .ui and Slicer's GUI
connectors name. Each is its own class (Slicer's connectors test ``type(widget) in (...)``)."""

from qt import QAbstractButton, QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QPushButton, QWidget


class ctkCollapsibleButton(QAbstractButton):
    """A section header: ``collapsed`` hides the contents and emits ``contentsCollapsed(bool)``."""

    _signal_names = ("contentsCollapsed",)

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self._collapsed = False

    @property
    def collapsed(self):
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value):
        value = bool(value)
        if value != self._collapsed:
            self._collapsed = value
            self.contentsCollapsed.emit(value)

    def click(self):
        self.collapsed = not self.collapsed


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    pass


class ctkDoubleSpinBox(QDoubleSpinBox):
    pass


class ctkSliderWidget(QDoubleSpinBox):
    pass


class ctkDoubleSlider(QDoubleSpinBox):
    pass


class ctkRangeWidget(QWidget):
    pass


class ctkDoubleRangeSlider(QWidget):
    pass


class ctkPathLineEdit(QLineEdit):
    pass


class ctkDirectoryButton(QWidget):
    pass


class ctkColorPickerButton(QWidget):
    pass


class ctkCheckablePushButton(QPushButton):
    pass
