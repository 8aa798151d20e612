//! Thumbnails in the spec's two methods (client-server API, "Content
//! repository" → "Thumbnails"). Pure and blocking: callers run it on the
//! blocking pool.
//!
//! - `scale` keeps the aspect ratio and fits the image in the requested box
//!   (one side equal to the request, the other no larger), as Synapse does.
//! - `crop` gives the requested aspect ratio: scaled to cover the box, then
//!   cut from the centre.
//!
//! Never upscaled: content no larger than the request is served as it is
//! ("servers should return the original content"). Only PNG, JPEG, GIF and
//! WebP are decoded, recognised by their bytes, not by the uploaded
//! `Content-Type`. Animated sources are only passed through when the client
//! asked for `animated=true`; otherwise their first frame becomes a PNG,
//! since the spec says a server MUST NOT answer `animated=false` with an
//! animation.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// `crop` or `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "crop" => Some(Method::Crop),
            "scale" => Some(Method::Scale),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    /// `animated=true`: an animated source may be served as it is.
    pub animated: bool,
}

/// The thumbnail to serve.
#[derive(Debug, PartialEq, Eq)]
pub enum Thumb {
    /// The source itself (small enough, and not a forbidden animation), of
    /// this type (from its bytes).
    Original(&'static str),
    Image {
        bytes: Vec<u8>,
        content_type: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThumbError {
    #[error("cannot generate thumbnails for the requested content")]
    NotAnImage,
    #[error("content is too large to thumbnail")]
    TooLarge,
}

/// The thumbnail of `src` for `spec`; `max_pixels` bounds what is decoded
/// (a small file can announce a huge image).
pub fn make(src: &[u8], spec: Spec, max_pixels: u64) -> Result<Thumb, ThumbError> {
    let format = image::guess_format(src).map_err(|_| ThumbError::NotAnImage)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(ThumbError::NotAnImage);
    }
    let reader = || ImageReader::with_format(Cursor::new(src), format);
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|_| ThumbError::NotAnImage)?;
    if w == 0 || h == 0 {
        return Err(ThumbError::NotAnImage);
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ThumbError::TooLarge);
    }
    let target = target_size(w, h, spec);
    if target.is_none() && (spec.animated || !maybe_animated(src, format)) {
        return Ok(Thumb::Original(format.to_mime_type()));
    }
    let mut r = reader();
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    r.limits(limits);
    let img = r.decode().map_err(|_| ThumbError::NotAnImage)?;
    let out = match target {
        None => img,
        Some(Target::Fit(tw, th)) => img.thumbnail_exact(tw, th),
        Some(Target::Crop {
            x,
            y,
            cw,
            ch,
            tw,
            th,
        }) => {
            let cut = img.crop_imm(x, y, cw, ch);
            if (cw, ch) == (tw, th) {
                cut
            } else {
                cut.thumbnail_exact(tw, th)
            }
        }
    };
    encode(&out, format == ImageFormat::Jpeg)
}

/// How to get from the source to the thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Resize to this size.
    Fit(u32, u32),
    /// Cut `cw`×`ch` at (`x`, `y`), then resize that to `tw`×`th`.
    Crop {
        x: u32,
        y: u32,
        cw: u32,
        ch: u32,
        tw: u32,
        th: u32,
    },
}

/// The resizing for a `w`×`h` source, `None` when the source is served at
/// its own size (no upscaling).
fn target_size(w: u32, h: u32, spec: Spec) -> Option<Target> {
    let (rw, rh) = (u64::from(spec.width.max(1)), u64::from(spec.height.max(1)));
    let (w64, h64) = (u64::from(w), u64::from(h));
    match spec.method {
        Method::Scale => {
            if rw >= w64 && rh >= h64 {
                return None;
            }
            // Fit in the box: the tighter ratio decides (as Synapse's
            // `Thumbnailer.aspect`).
            let (tw, th) = if rw * h64 < rh * w64 {
                (rw, (rw * h64 / w64).max(1))
            } else {
                ((rh * w64 / h64).max(1), rh)
            };
            Some(Target::Fit(tw as u32, th as u32))
        }
        Method::Crop => {
            // The source window with the requested aspect ratio, as large
            // as the source allows, centred.
            let (cw, ch) = if rw * h64 > rh * w64 {
                (w64, (w64 * rh / rw).max(1))
            } else {
                ((h64 * rw / rh).max(1), h64)
            };
            // Shrink it to the request, never grow it.
            let (tw, th) = if cw > rw { (rw, rh) } else { (cw, ch) };
            if (cw, ch) == (w64, h64) && (tw, th) == (cw, ch) {
                return None;
            }
            Some(Target::Crop {
                x: ((w64 - cw) / 2) as u32,
                y: ((h64 - ch) / 2) as u32,
                cw: cw as u32,
                ch: ch as u32,
                tw: tw.max(1) as u32,
                th: th.max(1) as u32,
            })
        }
    }
}

/// Whether the source may hold an animation (GIF: any; WebP and APNG by
/// their headers).
fn maybe_animated(src: &[u8], format: ImageFormat) -> bool {
    match format {
        ImageFormat::Gif => true,
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(src))
            .map(|d| d.has_animation())
            .unwrap_or(true),
        ImageFormat::Png => PngDecoder::new(Cursor::new(src))
            .and_then(|d| d.is_apng())
            .unwrap_or(true),
        _ => false,
    }
}

/// JPEG for JPEG sources (photos), PNG for everything else (keeps alpha).
fn encode(img: &DynamicImage, jpeg: bool) -> Result<Thumb, ThumbError> {
    let mut bytes = Vec::new();
    if jpeg {
        let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
        rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 80))
            .map_err(|_| ThumbError::NotAnImage)?;
        Ok(Thumb::Image {
            bytes,
            content_type: "image/jpeg",
        })
    } else {
        img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|_| ThumbError::NotAnImage)?;
        Ok(Thumb::Image {
            bytes,
            content_type: "image/png",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: u32, height: u32, method: Method) -> Spec {
        Spec {
            width,
            height,
            method,
            animated: false,
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn dims(bytes: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(bytes).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn scale_fits_the_box_and_keeps_aspect() {
        assert_eq!(
            target_size(800, 600, spec(320, 240, Method::Scale)),
            Some(Target::Fit(320, 240))
        );
        assert_eq!(
            target_size(800, 400, spec(320, 240, Method::Scale)),
            Some(Target::Fit(320, 160))
        );
        assert_eq!(
            target_size(400, 800, spec(320, 240, Method::Scale)),
            Some(Target::Fit(120, 240))
        );
        // Smaller than the box: the original.
        assert_eq!(target_size(100, 50, spec(320, 240, Method::Scale)), None);
    }

    #[test]
    fn crop_takes_the_requested_aspect_from_the_centre() {
        assert_eq!(
            target_size(800, 600, spec(96, 96, Method::Crop)),
            Some(Target::Crop {
                x: 100,
                y: 0,
                cw: 600,
                ch: 600,
                tw: 96,
                th: 96
            })
        );
        // Too small to shrink: cut to the aspect at the source's scale.
        assert_eq!(
            target_size(1000, 50, spec(96, 96, Method::Crop)),
            Some(Target::Crop {
                x: 475,
                y: 0,
                cw: 50,
                ch: 50,
                tw: 50,
                th: 50
            })
        );
        assert_eq!(target_size(50, 50, spec(96, 96, Method::Crop)), None);
    }

    #[test]
    fn makes_real_thumbnails() {
        let src = png(640, 480);
        let Thumb::Image {
            bytes,
            content_type,
        } = make(&src, spec(96, 96, Method::Crop), 1 << 30).unwrap()
        else {
            panic!("expected a thumbnail");
        };
        assert_eq!(content_type, "image/png");
        assert_eq!(dims(&bytes), (96, 96));
        let Thumb::Image { bytes, .. } =
            make(&src, spec(320, 320, Method::Scale), 1 << 30).unwrap()
        else {
            panic!("expected a thumbnail");
        };
        assert_eq!(dims(&bytes), (320, 240));
        assert_eq!(
            make(&src, spec(800, 600, Method::Scale), 1 << 30).unwrap(),
            Thumb::Original("image/png")
        );
    }

    #[test]
    fn refuses_non_images_and_huge_ones() {
        assert_eq!(
            make(b"hello, world", spec(32, 32, Method::Crop), 1 << 30),
            Err(ThumbError::NotAnImage)
        );
        assert_eq!(
            make(
                b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                spec(32, 32, Method::Crop),
                1 << 30
            ),
            Err(ThumbError::NotAnImage)
        );
        // A truncated PNG: the header parses, the pixels do not.
        let src = png(64, 64);
        assert_eq!(
            make(&src[..60], spec(32, 32, Method::Crop), 1 << 30),
            Err(ThumbError::NotAnImage)
        );
        assert_eq!(
            make(&src, spec(32, 32, Method::Crop), 100),
            Err(ThumbError::TooLarge)
        );
    }
}
