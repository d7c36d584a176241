from .format import TeacherImage, TeacherSource, TeacherStore, open_teacher

__all__ = ["TeacherImage", "TeacherSource", "TeacherStore", "open_teacher"]
