// Runs PixelMed's validators on many files in one JVM (the XSLT set-up costs seconds per start).
// Usage: java -cp pixelmed.jar PixelmedValidate.java FILE...
// SR files go through DicomSRValidator (template and IOD), the others through DicomInstanceValidator.
// Each file's report is preceded by a line "=== FILE" and followed by a line "=== end".
// PixelMed has no JPEG 2000 reader: such a file is read up to its pixel data, which is said.
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelmedValidate {
    public static void main(String[] args) throws Exception {
        DicomSRValidator sr = null;
        DicomInstanceValidator iod = null;
        for (String path : args) {
            System.out.println("=== " + path);
            try {
                AttributeList list = new AttributeList();
                try {
                    list.read(path);
                } catch (com.pixelmed.dicom.DicomException e) {
                    System.out.println("Note: pixel data not read (" + e.getMessage() + ")");
                    list = new AttributeList();
                    list.read(path, TagFromName.PixelData);
                }
                String sopClass = Attribute_getString(list);
                if (SOPClass.isStructuredReport(sopClass)) {
                    if (sr == null) sr = new DicomSRValidator();
                    // the options of DicomSRValidator's own main(): match code meaning case only
                    System.out.print(sr.validate(path, false, true, false, false, false));
                } else {
                    if (iod == null) iod = new DicomInstanceValidator();
                    System.out.print(iod.validate(list));
                }
            } catch (Exception e) {
                System.out.println("Error: validator failed: " + e);
            }
            System.out.println("\n=== end");
        }
    }

    private static String Attribute_getString(AttributeList list) {
        return com.pixelmed.dicom.Attribute.getSingleStringValueOrEmptyString(list, TagFromName.SOPClassUID);
    }
}
